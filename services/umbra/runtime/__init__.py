"""The one service runtime every Umbra service runs on: configuration, logging, errors, authentication,
long-running operations and the server bootstrap."""
