"""vac.ipc"""
