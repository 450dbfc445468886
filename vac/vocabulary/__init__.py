"""vac.vocabulary: the words the tree, its workers and the runtimes share (imports nothing of ours).

Child and factory states, slot and machine states, slot ids, container labels
and the live set's timings. vac/supervisor/ and vac/workers/ both import this
package and never each other (apart from the tree starting its workers' `run`).
"""
