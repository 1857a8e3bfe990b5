"""The Redis fixtures, kept importable here; :mod:`tests.servers` owns them."""

from tests.servers import RedisServer, free_port, own_redis, prefix, redis_url, unavailable

__all__ = ["RedisServer", "free_port", "own_redis", "prefix", "redis_url", "unavailable"]
