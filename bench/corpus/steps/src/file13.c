/* Generated source 13 of the steps context. */
int f13(int x) { return x * 13 + 1; }
