"""vac.supervisor"""
