"""Notifiers: where out-of-band one-time codes leave the appliance (the organization's own
SMTP relay). Adapters to the outside, like engines: they import only core and config, and
identity reaches them through the ``CodeNotifier`` port."""
