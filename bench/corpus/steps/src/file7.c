/* Generated source 7 of the steps context. */
int f7(int x) { return x * 7 + 1; }
