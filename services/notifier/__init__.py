"""The notifier (issue 4): signed webhooks to offline users, retries and dead letters."""
