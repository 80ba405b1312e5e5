"""Tools the agent may use: each declares its parameters, data scopes, whether it changes
anything, and the assurance level it needs. Only tools enabled in config exist for the model."""
