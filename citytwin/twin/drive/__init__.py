"""Live drive: the twin sends its interactions to a real IOC in wall-clock time and measures it (open model)."""
