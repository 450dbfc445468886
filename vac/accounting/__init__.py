"""vac.accounting"""
