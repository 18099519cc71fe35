"""What fits a card: the accumulation search, the trial child, target cards, memory meters, the time
estimate, the probe of a spec."""
