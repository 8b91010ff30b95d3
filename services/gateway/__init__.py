"""The gateway: bridges WebSockets and HTTP to the session log on NATS JetStream."""
