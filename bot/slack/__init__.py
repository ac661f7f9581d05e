"""The Slack adapter: slack-bolt for events, commands and interactivity (HTTP or Socket Mode),
slack_sdk's Web API client for the plugins' chat calls. It translates; the runtime decides."""
