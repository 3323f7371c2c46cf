FROM python:3.11-slim
# the C MySQL driver (the 'mysqlclient' extra) is faster on the MariaDB copy path than the default PyMySQL
RUN apt-get update && apt-get install -y --no-install-recommends gcc pkg-config libmariadb-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir '.[mysqlclient]'
CMD ["dualwrite", "worker"]
