"""The server stage: a finished run answering photos over HTTP (`geoloc-serve`), its page and its JSON API."""
