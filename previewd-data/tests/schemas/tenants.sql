-- A multi-tenant task tracker: composite primary and foreign keys (a three-column foreign
-- key), a self-reference, a domain with a check, a table without a primary key.
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);

CREATE TABLE tenants (
    id int PRIMARY KEY,
    slug text NOT NULL UNIQUE,
    plan text NOT NULL CHECK (plan = ANY (ARRAY['free', 'team', 'enterprise']))
);
CREATE TABLE projects (
    tenant_id int REFERENCES tenants,
    id int,
    name text NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE tasks (
    id bigserial PRIMARY KEY,
    tenant_id int NOT NULL,
    project_id int NOT NULL,
    title text NOT NULL,
    done boolean NOT NULL,
    estimate positive_int,
    parent_task_id bigint REFERENCES tasks,
    starts_on date,
    due_on date,
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id),
    CHECK (due_on >= starts_on)
);
CREATE TABLE labels (
    project_tenant int,
    project_id int,
    name text,
    color varchar(7) NOT NULL,
    PRIMARY KEY (project_tenant, project_id, name),
    FOREIGN KEY (project_tenant, project_id) REFERENCES projects
);
CREATE TABLE task_labels (
    task_id bigint REFERENCES tasks,
    tenant int,
    project int,
    label text,
    FOREIGN KEY (tenant, project, label) REFERENCES labels,
    PRIMARY KEY (task_id, tenant, project, label)
);
CREATE TABLE activity (
    task_id bigint NOT NULL REFERENCES tasks,
    message text NOT NULL,
    happened_at timestamp NOT NULL
);
