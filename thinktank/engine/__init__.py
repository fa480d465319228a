"""Running a session: the scheduler, the step kinds, model calls, budgets and results."""
