"""A real HTTP file server with Range support (Starlette StaticFiles under uvicorn), for pull tests.

    python -m tests.static_server ROOT PORT
"""

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

if __name__ == "__main__":
    app = Starlette(routes=[Mount("/", app=StaticFiles(directory=sys.argv[1]))])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="info", access_log=True)
