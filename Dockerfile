# vapi-bridge as a container: `vapi-bridge serve --no-tunnel` on 0.0.0.0, as a non-root user,
# keys from the environment at run time. See docs/deploy.md.
#
#   docker build -t vapi-bridge .
#   docker run --init -p 8080:8080 -e SAMBANOVA_API_KEY -e VAPI_BRIDGE_SECRET vapi-bridge

ARG PYTHON_IMAGE=python:3.12-slim

# The bridge and its dependencies in a virtual environment without pip. The build backend
# lives only in pip's temporary build environment, so nothing of it reaches the final image.
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY vapi_bridge ./vapi_bridge
RUN python -m venv --without-pip /opt/vapi-bridge \
    && python -m pip --python /opt/vapi-bridge/bin/python install \
        --no-cache-dir --disable-pip-version-check .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/vapi-bridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VAPI_BRIDGE_HOME=/var/lib/vapi-bridge \
    PORT=8080
COPY --from=build /opt/vapi-bridge /opt/vapi-bridge
# The bridge writes its state file (and, with --workers, a short-lived 0600 settings file)
# to VAPI_BRIDGE_HOME; with --workers it also needs a writable /tmp (compose mounts a tmpfs).
RUN groupadd --gid 10001 bridge \
    && useradd --uid 10001 --gid bridge --no-create-home --home-dir /var/lib/vapi-bridge \
        --shell /usr/sbin/nologin bridge \
    && install -d -o bridge -g bridge -m 0700 /var/lib/vapi-bridge
USER 10001:10001
EXPOSE 8080
# Liveness: /health answers without a key and without calling SambaNova. No curl in slim.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=2)"]
# Exec form: the bridge is PID 1 and gets SIGTERM itself (it finishes live replies within
# --shutdown-grace). Run with --init (tini) when you use --workers, so orphans are reaped.
# serve reads the port from $PORT (8080 above, or what the platform sets); arguments after
# the image name are more serve options.
ENTRYPOINT ["vapi-bridge", "serve", "--no-tunnel", "--host", "0.0.0.0"]
