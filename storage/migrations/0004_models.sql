-- Base models at run time: the model a job runs on, the model a user picked in /settings, and
-- the architecture (text-encoder width: 768 SD 1.x, 1024 SD 2.x) a LoRA was made for.

ALTER TABLE jobs ADD COLUMN model TEXT;
ALTER TABLE users ADD COLUMN model TEXT;
ALTER TABLE loras ADD COLUMN base_width INTEGER CHECK (base_width IS NULL OR base_width > 0);
