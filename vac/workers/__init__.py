"""vac.workers"""
