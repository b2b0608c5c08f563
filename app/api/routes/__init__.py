"""One router per resource: health, sessions, objects, stream."""
