"""vac.machine"""
