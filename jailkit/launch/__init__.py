"""The launcher: `jailkit run` confines a service in namespaces; one module per kernel concern."""
