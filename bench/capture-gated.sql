-- The schema v4 capture triggers with a gate (an experiment measured in docs/BENCHMARKS.md, "Schema v4", not the
-- migration): the ownership row is read only while some session holds the named lock shardbank_capture.
-- Usage: AFTER_SQL=bench/capture-gated.sql bench/capture-cost.sh BEFORE-BIN AFTER-BIN
DELIMITER //
CREATE OR REPLACE TRIGGER account_info_capture_insert AFTER INSERT ON account_info FOR EACH ROW
BEGIN
  DECLARE c TINYINT DEFAULT 0;
  DECLARE c_new TINYINT DEFAULT 0;
  DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
  IF IS_USED_LOCK('shardbank_capture') IS NOT NULL THEN
SELECT capture INTO c FROM range_ownership WHERE map_name = 'accounts' AND range_id = NEW.balance_range LOCK IN SHARE MODE;
IF c = 1 THEN INSERT INTO range_changes (map_name, range_id, account_id) VALUES ('accounts', NEW.balance_range, NEW.account_id); END IF;
  END IF;
END //
CREATE OR REPLACE TRIGGER account_info_capture_update AFTER UPDATE ON account_info FOR EACH ROW
BEGIN
  DECLARE c TINYINT DEFAULT 0;
  DECLARE c_new TINYINT DEFAULT 0;
  DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
  IF IS_USED_LOCK('shardbank_capture') IS NOT NULL THEN
SELECT capture INTO c FROM range_ownership WHERE map_name = 'accounts' AND range_id = OLD.balance_range LOCK IN SHARE MODE;
IF c = 1 THEN INSERT INTO range_changes (map_name, range_id, account_id) VALUES ('accounts', OLD.balance_range, OLD.account_id); END IF;
IF NEW.balance_range <> OLD.balance_range THEN
  SELECT capture INTO c_new FROM range_ownership WHERE map_name = 'accounts' AND range_id = NEW.balance_range LOCK IN SHARE MODE;
  IF c_new = 1 THEN INSERT INTO range_changes (map_name, range_id, account_id) VALUES ('accounts', NEW.balance_range, NEW.account_id); END IF;
ELSEIF c = 1 AND NEW.account_id <> OLD.account_id THEN
  INSERT INTO range_changes (map_name, range_id, account_id) VALUES ('accounts', NEW.balance_range, NEW.account_id);
END IF;
  END IF;
END //
CREATE OR REPLACE TRIGGER account_info_capture_delete AFTER DELETE ON account_info FOR EACH ROW
BEGIN
  DECLARE c TINYINT DEFAULT 0;
  DECLARE c_new TINYINT DEFAULT 0;
  DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
  IF IS_USED_LOCK('shardbank_capture') IS NOT NULL THEN
SELECT capture INTO c FROM range_ownership WHERE map_name = 'accounts' AND range_id = OLD.balance_range LOCK IN SHARE MODE;
IF c = 1 THEN INSERT INTO range_changes (map_name, range_id, account_id) VALUES ('accounts', OLD.balance_range, OLD.account_id); END IF;
  END IF;
END //
CREATE OR REPLACE TRIGGER account_directory_capture_insert AFTER INSERT ON account_directory FOR EACH ROW
BEGIN
  DECLARE c TINYINT DEFAULT 0;
  DECLARE c_new TINYINT DEFAULT 0;
  DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
  IF IS_USED_LOCK('shardbank_capture') IS NOT NULL THEN
SELECT capture INTO c FROM range_ownership WHERE map_name = 'directory' AND range_id = NEW.directory_range LOCK IN SHARE MODE;
IF c = 1 THEN INSERT INTO range_changes (map_name, range_id, account_id) VALUES ('directory', NEW.directory_range, NEW.account_id); END IF;
  END IF;
END //
CREATE OR REPLACE TRIGGER account_directory_capture_update AFTER UPDATE ON account_directory FOR EACH ROW
BEGIN
  DECLARE c TINYINT DEFAULT 0;
  DECLARE c_new TINYINT DEFAULT 0;
  DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
  IF IS_USED_LOCK('shardbank_capture') IS NOT NULL THEN
SELECT capture INTO c FROM range_ownership WHERE map_name = 'directory' AND range_id = OLD.directory_range LOCK IN SHARE MODE;
IF c = 1 THEN INSERT INTO range_changes (map_name, range_id, account_id) VALUES ('directory', OLD.directory_range, OLD.account_id); END IF;
IF NEW.directory_range <> OLD.directory_range THEN
  SELECT capture INTO c_new FROM range_ownership WHERE map_name = 'directory' AND range_id = NEW.directory_range LOCK IN SHARE MODE;
  IF c_new = 1 THEN INSERT INTO range_changes (map_name, range_id, account_id) VALUES ('directory', NEW.directory_range, NEW.account_id); END IF;
ELSEIF c = 1 AND NEW.account_id <> OLD.account_id THEN
  INSERT INTO range_changes (map_name, range_id, account_id) VALUES ('directory', NEW.directory_range, NEW.account_id);
END IF;
  END IF;
END //
CREATE OR REPLACE TRIGGER account_directory_capture_delete AFTER DELETE ON account_directory FOR EACH ROW
BEGIN
  DECLARE c TINYINT DEFAULT 0;
  DECLARE c_new TINYINT DEFAULT 0;
  DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
  IF IS_USED_LOCK('shardbank_capture') IS NOT NULL THEN
SELECT capture INTO c FROM range_ownership WHERE map_name = 'directory' AND range_id = OLD.directory_range LOCK IN SHARE MODE;
IF c = 1 THEN INSERT INTO range_changes (map_name, range_id, account_id) VALUES ('directory', OLD.directory_range, OLD.account_id); END IF;
  END IF;
END //
DELIMITER ;
