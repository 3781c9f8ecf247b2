"""Push notifications: delivery to pushers (a durable consumer of the event stream) and
the plugin's own push gateway (FCM, Web Push, forwarding). See docs/push.md."""
