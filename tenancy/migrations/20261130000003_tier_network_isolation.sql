-- How far each tier's pods are isolated on the network (the provisioning controller's
-- NetworkPolicies read it): shared (same tenant), namespace, dedicated.
ALTER TABLE tiers
    ADD COLUMN network_isolation text NOT NULL DEFAULT 'shared'
        CHECK (network_isolation IN ('shared', 'namespace', 'dedicated'));
