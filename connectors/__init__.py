"""Sources into Kafka (file replay, MQTT, WebSocket, synthetic) and sinks out of it (webhooks)."""
