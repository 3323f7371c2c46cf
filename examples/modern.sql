-- The new store of examples/orders.yaml.
CREATE TABLE orders_v2 (
    id           bigint PRIMARY KEY,
    customer_id  bigint NOT NULL,
    total        numeric(14, 2) NOT NULL,
    amount_cents bigint NOT NULL,
    full_name    text,
    status       text NOT NULL,
    region       text NOT NULL,
    updated_at   timestamptz NOT NULL,
    version      bigint NOT NULL
);
