-- Tenantry's tenant directory. Every change bumps directory_version and NOTIFYs
-- `tenantry_directory` with the new version, so webhooks and enforcers swap in a fresh snapshot.

CREATE TABLE tiers (
    name              text PRIMARY KEY,
    rate_limit_rps    integer CHECK (rate_limit_rps >= 0),
    rate_limit_burst  integer CHECK (rate_limit_burst >= 0),
    priority_class    text,
    node_selector     jsonb NOT NULL DEFAULT '{}'::jsonb,
    tolerations       jsonb NOT NULL DEFAULT '[]'::jsonb,
    CHECK ((rate_limit_rps IS NULL) = (rate_limit_burst IS NULL))
);

-- ResourceQuota vocabulary; quantities stay text so `4Gi` round-trips as written.
CREATE TABLE tier_limits (
    tier      text NOT NULL REFERENCES tiers (name) ON UPDATE CASCADE ON DELETE CASCADE,
    resource  text NOT NULL,
    quantity  text NOT NULL,
    PRIMARY KEY (tier, resource)
);

CREATE TABLE clients (
    id            text PRIMARY KEY,
    display_name  text
);

CREATE TABLE tenants (
    id      text PRIMARY KEY,
    tier    text NOT NULL REFERENCES tiers (name) ON UPDATE CASCADE,
    status  text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    client  text REFERENCES clients (id) ON UPDATE CASCADE
);

-- The primary key is what makes "a namespace claimed by two tenants" impossible.
CREATE TABLE tenant_namespaces (
    namespace  text PRIMARY KEY,
    tenant     text NOT NULL REFERENCES tenants (id) ON UPDATE CASCADE ON DELETE CASCADE
);

CREATE TABLE teams (
    tenant  text NOT NULL REFERENCES tenants (id) ON UPDATE CASCADE ON DELETE CASCADE,
    name    text NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE team_namespaces (
    namespace  text PRIMARY KEY REFERENCES tenant_namespaces (namespace) ON DELETE CASCADE,
    tenant     text NOT NULL,
    team       text NOT NULL,
    FOREIGN KEY (tenant, team) REFERENCES teams (tenant, name) ON UPDATE CASCADE ON DELETE CASCADE
);

-- Members of a tenant (team IS NULL) or of one of its teams. kind: user, group, serviceaccount
-- (serviceaccount names are `namespace:name`).
CREATE TABLE members (
    tenant  text NOT NULL REFERENCES tenants (id) ON UPDATE CASCADE ON DELETE CASCADE,
    team    text NOT NULL DEFAULT '',
    kind    text NOT NULL CHECK (kind IN ('user', 'group', 'serviceaccount')),
    name    text NOT NULL,
    PRIMARY KEY (tenant, team, kind, name)
);

CREATE TABLE directory_version (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version    bigint NOT NULL
);
INSERT INTO directory_version (version) VALUES (1);

CREATE FUNCTION tenantry_directory_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    UPDATE directory_version SET version = version + 1 RETURNING version INTO v;
    -- Delivered at commit, and folded into one notification per transaction and payload.
    PERFORM pg_notify('tenantry_directory', v::text);
    RETURN NULL;
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tiers', 'tier_limits', 'clients', 'tenants', 'tenant_namespaces',
                             'teams', 'team_namespaces', 'members']
    LOOP
        EXECUTE format(
            'CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I '
            'FOR EACH STATEMENT EXECUTE FUNCTION tenantry_directory_changed()',
            t || '_changed', t);
    END LOOP;
END
$$;
