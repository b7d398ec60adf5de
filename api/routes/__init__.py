"""The API's blueprints, one per resource: jobs, health, the OpenAPI document."""
