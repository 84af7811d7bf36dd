"""The sending stage: one request to an answer under the limits, and what is checked about the server."""
