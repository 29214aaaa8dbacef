"""Simulated devices: traffic detectors, cameras, environmental sensors, bus GPS; encoders and transports."""
