"""The Faust topology: readings in; predictions, alerts, state and dead letters out."""
