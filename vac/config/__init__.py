"""vac.config"""
