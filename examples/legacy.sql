-- The old store of examples/orders.yaml.
CREATE TABLE orders (
    id          bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    amount      numeric(12, 2) NOT NULL,
    first_name  text,
    last_name   text,
    status      text NOT NULL,
    legacy_flag boolean,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    version     bigint NOT NULL DEFAULT 1
);
INSERT INTO orders (id, customer_id, amount, first_name, last_name, status)
SELECT i, i % 100, i * 1.25, 'Ada', 'Lovelace', 'open' FROM generate_series(1, 1000) AS i;
