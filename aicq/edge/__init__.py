"""The transports: every way a request or a live session reaches the service.

Each module here is a thin adapter over ``ChatService`` and the hub; none of them
holds a rule of its own (validation, limits and authorization live in the service).
"""
