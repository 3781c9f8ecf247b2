"""Federation: other servers' keys, signed requests, finding servers, talking to them."""
