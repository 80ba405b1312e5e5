"""Running the appliance as a service: the process supervisor, systemd notify and watchdog,
the in-process egress guard, and the self-checks of ``appliance doctor``."""
