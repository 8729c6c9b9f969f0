"""The PPO2 / random search over surrogate parameters (policy, journal, trial execution)."""
