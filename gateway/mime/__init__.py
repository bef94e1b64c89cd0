"""The MIME and attachment stages: parse once under budgets, then inspect what clients will see."""
