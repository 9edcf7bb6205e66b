"""The wire: snappy and protobuf framing, and the message-level walk that turns read answers into write requests
without decoding samples."""
