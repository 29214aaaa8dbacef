"""Static assignment, demand fitting to counts, behaviour and service-time fitting, validation metrics."""
