# edgecache: a small, non-root image. Build: docker build -t edgecache .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgecache ./edgecache
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
COPY config /etc/edgecache
RUN useradd --system --uid 10001 --home-dir /var/cache/edgecache edgecache \
    && mkdir -p /var/cache/edgecache && chown edgecache /var/cache/edgecache
USER edgecache
WORKDIR /var/cache/edgecache
EXPOSE 8080 9180
# /healthz on the admin listener; the image's default config listens on 0.0.0.0:8080 with admin on :9180.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9180/healthz', timeout=2).status != 200)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["edgecache"]
CMD ["serve", "--config", "/etc/edgecache/docker/single.toml"]
