# smiling-relay: the media relay (SFU) and its REST / WebSocket API in one process.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY api ./api
COPY calls ./calls
COPY metrics ./metrics
COPY relay ./relay
COPY signaling ./signaling
COPY smiling_relay ./smiling_relay
COPY storage ./storage
COPY synth ./synth
COPY web ./web
# The server only: the QA tool's plotting (matplotlib) is the `qa` extra, not installed here.
RUN pip install . && rm -rf build *.egg-info

RUN useradd --system --uid 10001 --home-dir /data relay \
    && mkdir -p /data && chown relay /data
USER relay

# Production by default: start-up fails without JWT_SECRET. Media uses the UDP range below;
# publish it 1:1 (-p 40000-40099:40000-40099/udp) and set RELAY_ANNOUNCED_IP to the public IP.
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080 \
    SQLITE_PATH=/data/relay.sqlite3 \
    RELAY_UDP_PORTS=40000-40099
EXPOSE 8080/tcp 40000-40099/udp
VOLUME ["/data"]

# Loopback probe: with TLS_CERT_FILE set the server speaks only HTTPS (certificate not checked).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD python -c "import os, ssl, urllib.request; tls = bool(os.environ.get('TLS_CERT_FILE')); urllib.request.urlopen(('https' if tls else 'http') + '://127.0.0.1:' + os.environ.get('PORT', '8080') + '/healthz', timeout=4, context=ssl._create_unverified_context() if tls else None)"

CMD ["smiling-relay", "serve"]
