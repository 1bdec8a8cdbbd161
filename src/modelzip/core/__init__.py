"""The middle layer every technique stands on: the registry, the context a technique runs in,
the data protocol, layer selection and the generic record of structural changes."""
