"""Built-in plugins, written only against the plugin API and discovered through entry points."""
