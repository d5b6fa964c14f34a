-- Each member's role in its tenant (team = '') or team: admin (Kubernetes `admin`), developer
-- (`edit`, the default, what every member was before), viewer (`view`).
ALTER TABLE members
    ADD COLUMN role text NOT NULL DEFAULT 'developer'
        CHECK (role IN ('admin', 'developer', 'viewer'));
