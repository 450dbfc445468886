"""vac.space: VacQuery between the factories of a space (protocol, local status, space totals)."""
