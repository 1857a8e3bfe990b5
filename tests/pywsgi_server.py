"""Serve tests.apps:create_app with gevent's own WSGIServer (the suite's second server)."""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from gevent.pywsgi import WSGIServer  # noqa: E402

from tests.apps import create_app  # noqa: E402

if __name__ == "__main__":
    WSGIServer(("127.0.0.1", int(sys.argv[1])), create_app(), log=None).serve_forever()
