"""Small simulated tasks used for the embedded demo dataset and for rollouts."""
