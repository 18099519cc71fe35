"""A run as the unit of work: plan, execute, record; its artifacts; pseudo-labels; the lock; lr-find over a
spec entry."""
