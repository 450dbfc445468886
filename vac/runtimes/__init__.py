"""vac.runtimes"""
