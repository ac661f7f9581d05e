"""pytest fixtures for Slack: the fake Web API server, the fake Socket Mode server, signing."""
